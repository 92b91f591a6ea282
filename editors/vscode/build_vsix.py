"""Package the VS Code extension as an installable `.vsix`, with Python's standard library only.

A `.vsix` is a zip in the Open Packaging Conventions layout that `vsce package` writes:
`[Content_Types].xml` (a content type per file extension), `extension.vsixmanifest` (identity,
engine, assets) and the extension's files under `extension/`. Node and `vsce` are not needed,
so anyone with this repository can build it.

    python editors/vscode/build_vsix.py            # -> editors/vscode/attnspec-0.1.0.vsix
    code --install-extension editors/vscode/attnspec-0.1.0.vsix

Example:
    >>> from pathlib import Path; import tempfile, zipfile
    >>> out = build(Path(tempfile.mkdtemp()))
    >>> "extension/package.json" in zipfile.ZipFile(out).namelist()
    True
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Files of the extension, relative to this folder, and what each becomes inside the package.
PAYLOAD = ("package.json", "language-configuration.json", "syntaxes/attnspec.tmLanguage.json")
# Shown by VS Code on the extension's page (the asset types vsce gives them).
EXTRA = {"README.md": (HERE.parent / "README.md",
                       "Microsoft.VisualStudio.Services.Content.Details")}
CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown",
                 ".vsixmanifest": "text/xml", ".txt": "text/plain"}


def manifest(package: dict, assets: list[tuple[str, str]]) -> str:
    """The `extension.vsixmanifest` XML for `package` (package.json) and extra assets
    (type, path inside the zip)."""
    attr = {key: quoteattr(str(package[key])) for key in ("name", "version", "publisher")}
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<PackageManifest Version="2.0.0" '
        'xmlns="http://schemas.microsoft.com/developer/vsx-schema/2011" '
        'xmlns:d="http://schemas.microsoft.com/developer/vsx-schema-design/2011">',
        "  <Metadata>",
        f'    <Identity Language="en-US" Id={attr["name"]} Version={attr["version"]} '
        f'Publisher={attr["publisher"]}/>',
        f"    <DisplayName>{escape(package.get('displayName', package['name']))}</DisplayName>",
        f'    <Description xml:space="preserve">{escape(package.get("description", ""))}'
        "</Description>",
        f"    <Tags>{escape(','.join(package.get('keywords', [])))}</Tags>",
        f"    <Categories>{escape(','.join(package.get('categories', [])))}</Categories>",
        "    <GalleryFlags>Public</GalleryFlags>",
        "    <Properties>",
        '      <Property Id="Microsoft.VisualStudio.Code.Engine" '
        f'Value={quoteattr(package["engines"]["vscode"])}/>',
        '      <Property Id="Microsoft.VisualStudio.Code.ExtensionKind" Value="workspace"/>',
        "    </Properties>",
        "  </Metadata>",
        "  <Installation>",
        '    <InstallationTarget Id="Microsoft.VisualStudio.Code"/>',
        "  </Installation>",
        "  <Dependencies/>",
        "  <Assets>",
        '    <Asset Type="Microsoft.VisualStudio.Code.Manifest" Path="extension/package.json" '
        'Addressable="true"/>',
        *(f'    <Asset Type="{kind}" Path={quoteattr(path)} Addressable="true"/>'
          for kind, path in assets),
        "  </Assets>",
        "</PackageManifest>",
    ]
    return "\n".join(lines) + "\n"


def content_types(names: list[str]) -> str:
    """`[Content_Types].xml`: one Default entry per file extension in the package."""
    extensions = sorted({Path(name).suffix for name in names} | {".vsixmanifest"})
    missing = [ext for ext in extensions if ext not in CONTENT_TYPES]
    if missing:
        raise ValueError(f"no content type for {missing}: add it to CONTENT_TYPES")
    entries = [f'  <Default Extension="{ext}" ContentType="{CONTENT_TYPES[ext]}"/>'
               for ext in extensions]
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">\n'
            + "\n".join(entries) + "\n</Types>\n")


def build(out_dir: Path = HERE) -> Path:
    """Write `<name>-<version>.vsix` into `out_dir` and return its path."""
    package = json.loads((HERE / "package.json").read_text())
    files = {f"extension/{rel}": (HERE / rel).read_bytes() for rel in PAYLOAD}
    assets = []
    for name, (path, kind) in EXTRA.items():
        files[f"extension/{name}"] = path.read_bytes()
        assets.append((kind, f"extension/{name}"))
    license_file = REPO / "LICENSE"
    if license_file.is_file():  # vsce's asset for it; the package.json names the license
        files["extension/LICENSE.txt"] = license_file.read_bytes()
        assets.append(("Microsoft.VisualStudio.Services.Content.License",
                       "extension/LICENSE.txt"))
    out = Path(out_dir) / f"{package['name']}-{package['version']}.vsix"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as vsix:
        vsix.writestr("extension.vsixmanifest", manifest(package, assets))
        vsix.writestr("[Content_Types].xml", content_types([*files, "extension.vsixmanifest"]))
        for name, data in files.items():
            vsix.writestr(name, data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out-dir", type=Path, default=HERE,
                        help="where the .vsix goes (default: editors/vscode)")
    out = build(parser.parse_args(argv).out_dir)
    print(f"wrote {out}; install with: code --install-extension {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
