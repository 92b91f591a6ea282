"""attnspec's compile-time caches (Lark's parser tables, jinja2's compiled template): used when
the cache directory is writable, skipped without harm when it is not or holds garbage."""

from attnspec.cache import cache_dir
from attnspec.grammar import parser

TEXT = "attention A {\n heads = 2\n mask causal\n}\n"


def test_parser_tables_are_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == str(tmp_path / "c")
    first = parser._parser.__wrapped__()
    files = list((tmp_path / "c").glob("grammar-*.lark-cache"))
    assert len(files) == 1 and (tmp_path / "c").stat().st_mode & 0o077 == 0
    again = parser._parser.__wrapped__()  # loaded from the cache file
    assert first.parse(TEXT) == again.parse(TEXT)


def test_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path))
    parser._parser.__wrapped__()
    for f in tmp_path.glob("grammar-*.lark-cache"):
        f.write_bytes(b"not a cache")
    assert parser._parser.__wrapped__().parse(TEXT).data == "start"


def test_no_cache_when_the_directory_cannot_be_made(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(blocker / "sub"))
    assert cache_dir() is None
    assert parser._parser.__wrapped__().parse(TEXT).data == "start"


def test_cache_root_per_platform(monkeypatch):
    """The user cache directory of each platform (platformdirs' answer, resolved by hand)."""
    from attnspec.cache import cache_root

    monkeypatch.delenv("ATTNSPEC_CACHE_DIR", raising=False)
    assert cache_root("darwin", {}, "/Users/ada") == "/Users/ada/Library/Caches/attnspec"
    assert cache_root("win32", {"LOCALAPPDATA": r"C:\Users\ada\AppData\Local"}, r"C:\Users\ada") \
        == r"C:\Users\ada\AppData\Local\attnspec\Cache"
    assert cache_root("win32", {}, r"C:\Users\ada") == r"C:\Users\ada\AppData\Local\attnspec\Cache"
    assert cache_root("linux", {"XDG_CACHE_HOME": "/xdg"}, "/home/ada") == "/xdg/attnspec"
    assert cache_root("linux", {}, "/home/ada") == "/home/ada/.cache/attnspec"
    # A relative XDG_CACHE_HOME is ignored, as the XDG spec says.
    relative = {"XDG_CACHE_HOME": "rel"}
    assert cache_root("linux", relative, "/home/ada") == "/home/ada/.cache/attnspec"
    assert cache_root("darwin", {"ATTNSPEC_CACHE_DIR": "/c"}, "/Users/ada") == "/c"


def test_cache_dir_uses_the_platform_default(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNSPEC_CACHE_DIR", raising=False)
    monkeypatch.setattr("sys.platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / "Library" / "Caches" / "attnspec")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "attnspec")
