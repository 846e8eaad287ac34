import pytest

from data.mixtures import PRESETS, Mixture, get_mixture, load_yaml, parse_custom
from data.slimpajama import SOURCES

CC, C4, GH, BK, AX, WK, SE = SOURCES
EXPECTED = {
    "DC-1": {CC: 100},
    "DC-2": {CC: 90.9, GH: 9.1},
    "DC-3": {CC: 75.8, GH: 24.2},
    "DC-4": {CC: 75.8, WK: 24.2},
    "DC-6": {CC: 52.2, C4: 26.7, GH: 5.2, BK: 4.2, AX: 4.6, WK: 3.8, SE: 3.3},
    "SlimPajama": {CC: 52.2, C4: 26.7, GH: 5.2, BK: 4.2, AX: 4.6, WK: 3.8, SE: 3.3},
    "RedPajama": {CC: 72.6, C4: 14.4, GH: 4.9, BK: 2.1, AX: 2.3, WK: 2.0, SE: 1.7},
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_and_normalizes(name):
    m = get_mixture(name)
    assert m.name == name and m.origin
    assert sum(m.proportions.values()) == pytest.approx(1.0)
    if name in EXPECTED:
        total = sum(EXPECTED[name].values())
        assert m.proportions == pytest.approx({s: w / total for s, w in EXPECTED[name].items()})


def test_dc5_is_marked_unconfirmed():
    m = PRESETS["DC-5"]
    assert "UNCONFIRMED" in m.origin
    assert set(m.proportions) == {CC, GH, BK, WK}


def test_custom_string_and_yaml(tmp_path):
    m = get_mixture("RedPajamaCommonCrawl=0.8, RedPajamaGithub=0.2")
    assert m.proportions == pytest.approx({CC: 0.8, GH: 0.2})
    (tmp_path / "m.yaml").write_text("name: mine\nweights:\n  RedPajamaC4: 3\n  RedPajamaBook: 1\n")
    y = get_mixture(str(tmp_path / "m.yaml"))
    assert y.name == "mine" and y.proportions == pytest.approx({C4: 0.75, BK: 0.25})
    (tmp_path / "flat.yml").write_text("RedPajamaArXiv: 1\nRedPajamaWikipedia: 0\n")
    assert load_yaml(tmp_path / "flat.yml").proportions == {AX: 1.0}


@pytest.mark.parametrize(
    "spec,match",
    [
        ("RedPajamaReddit=1", "unknown source"),
        ("RedPajamaC4=-1,RedPajamaBook=1", ">= 0"),
        ("RedPajamaC4=0", "all be zero"),
        ("RedPajamaC4=abc", "not a number"),
        ("RedPajamaC4=1,RedPajamaC4=2", "twice"),
        ("RedPajamaC4", "unknown mixture"),
        ("RedPajamaC4=nan", ">= 0"),
        ("DC-9", "unknown mixture"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        get_mixture(spec)


def test_bad_yaml_and_type(tmp_path):
    (tmp_path / "b.yaml").write_text("RedPajamaC4: lots\n")
    with pytest.raises(ValueError, match="number"):
        get_mixture(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml(tmp_path / "c.yaml")
    with pytest.raises(TypeError):
        get_mixture(3)


def test_check_available():
    m = parse_custom("RedPajamaC4=1,RedPajamaGithub=1,RedPajamaBook=0")
    m.check_available({C4: 10, GH: 5})
    with pytest.raises(ValueError, match="RedPajamaGithub"):
        m.check_available({C4: 10, GH: 0})
    assert isinstance(get_mixture(m), Mixture)
