"""Every row of bench/ablate.py is a valid config, so the ablation cannot rot silently."""

from openrecog.config import load_config
from tests.bench_scripts import load_bench_script


def _ablate_module():
    return load_bench_script("ablate")


def test_every_ablation_row_is_a_valid_config_that_differs_from_the_base() -> None:
    ablate = _ablate_module()
    base = load_config(ablate.BASE_CONFIG, ["data.root=x"])
    names = [row.name for row in ablate.ROWS]
    assert names[0] == "base" and len(set(names)) == len(names)
    for row in ablate.ROWS[1:]:
        if row.post:
            assert not row.overrides, row.name
            continue
        config = load_config(ablate.BASE_CONFIG, ["data.root=x", *row.overrides])
        assert config != base, f"{row.name} does not change the base recipe"


def test_table_keeps_the_prose_around_it(tmp_path) -> None:
    _ablate_module()  # puts bench/ on sys.path
    from markdown_table import write_between_markers

    doc = tmp_path / "ablations.md"
    doc.write_text("intro\n<!-- t -->\nold\n<!-- /t -->\noutro\n")
    write_between_markers(doc, "t", "| new |\n")
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| new |" in text and "old" not in text
    fresh = tmp_path / "new.md"
    write_between_markers(fresh, "t", "| a |", title="Title")
    assert fresh.read_text() == "# Title\n\n<!-- t -->\n| a |\n<!-- /t -->\n"
