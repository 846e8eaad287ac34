import pytest

from data import benchmark


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--help"])
    assert e.value.code == 0 and "--train-docs" in capsys.readouterr().out


def test_markdown_rows():
    common = {"device": "cpu", "date": "d", "command": "c", "load_avg_1min_at_start": 1.0}
    records = [
        common
        | {
            "stage": "pipeline",
            "impl": "ours",
            "tokens_per_s": 6e5,
            "workers": 0,
            "seq_len": 8,
            "batch_size": 2,
            "bar_tokens_per_s": 500000,
            "bar_met": True,
        },
        common
        | {
            "stage": "prepare",
            "impl": "ours",
            "tokens_per_s": 1e5,
            "workers": 2,
            "tokens": 10,
            "seconds": 1.0,
        },
        common
        | {
            "stage": "dedup",
            "impl": "datasketch",
            "docs_per_s": 50.0,
            "workers": 1,
            "docs": 9,
            "pairs": 2,
            "precision": 1.0,
            "recall": 0.5,
            "threshold": 0.8,
            "true_pairs_in_sample": 4,
        },
    ]
    md = benchmark.markdown(records)
    assert "600,000 tokens/s" in md and "bar 500,000 met" in md and "recall 0.500" in md
    assert md.count("\n| ") == 4  # header + 3 rows
