"""The VS Code extension packs into an installable .vsix (editors/vscode/build_vsix.py): the zip
holds the manifest VS Code reads, a content type for every file, and the extension's files
byte for byte."""

import importlib.util
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editors" / "vscode"
NS = {"v": "http://schemas.microsoft.com/developer/vsx-schema/2011",
      "t": "http://schemas.openxmlformats.org/package/2006/content-types"}


def build(tmp_path):
    spec = importlib.util.spec_from_file_location("build_vsix", VSCODE / "build_vsix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(tmp_path)


def test_vsix_has_the_manifest_identity_and_every_file(tmp_path):
    package = json.loads((VSCODE / "package.json").read_text())
    out = build(tmp_path)
    assert out.name == f"{package['name']}-{package['version']}.vsix"
    with zipfile.ZipFile(out) as vsix:
        names = vsix.namelist()
        root = ET.fromstring(vsix.read("extension.vsixmanifest"))
        identity = root.find("v:Metadata/v:Identity", NS).attrib
        assert (identity["Id"], identity["Version"], identity["Publisher"]) == \
            (package["name"], package["version"], package["publisher"])
        engine = root.find("v:Metadata/v:Properties/v:Property"
                           "[@Id='Microsoft.VisualStudio.Code.Engine']", NS)
        assert engine.attrib["Value"] == package["engines"]["vscode"]
        assets = {a.attrib["Path"] for a in root.findall("v:Assets/v:Asset", NS)}
        assert "extension/package.json" in assets and assets <= set(names)
        # Every file the package.json points at is in the zip, unchanged.
        for contributed in ("package.json", "language-configuration.json",
                            "syntaxes/attnspec.tmLanguage.json"):
            assert vsix.read(f"extension/{contributed}") == (VSCODE / contributed).read_bytes()
        grammar = package["contributes"]["grammars"][0]["path"].removeprefix("./")
        assert f"extension/{grammar}" in names
        types = ET.fromstring(vsix.read("[Content_Types].xml"))
        covered = {d.attrib["Extension"] for d in types.findall("t:Default", NS)}
        assert {Path(n).suffix for n in names if n != "[Content_Types].xml"} <= covered


def test_vsix_file_is_not_committed():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "*.vsix" in ignored
