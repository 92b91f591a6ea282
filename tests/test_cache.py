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
