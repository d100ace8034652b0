"""Progress off a terminal: no bar, one plain line at the start, at most one per interval, one
at the end; nothing with enabled=False."""

from __future__ import annotations

from qrecipe.engine.progress import progress_bar


def test_off_a_terminal_progress_is_a_few_plain_lines(capsys):
    assert list(progress_bar(range(5), desc="quantize", unit="layer")) == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().err.splitlines()  # captured stderr is not a terminal
    assert [line.split(",")[0] for line in lines] == ["quantize: 0/5 layers (0%)", "quantize: 5/5 layers (100%)"]
    assert "\r" not in "".join(lines)

    bar = progress_bar(total=3, desc="calibrate", unit="block", every=0)  # every update may print
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "calibrate: 0/3 blocks (0%)", "calibrate: 1/3 blocks (33%)", "calibrate: 2/3 blocks (67%)",
        "calibrate: 3/3 blocks (100%)"]  # said once, not again by close()


def test_disabled_progress_prints_nothing(capsys):
    assert list(progress_bar(iter("ab"), desc="score", unit="batch", enabled=False)) == ["a", "b"]
    bar = progress_bar(total=2, desc="x", unit="y", enabled=False)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_resumed_loop_starts_from_what_is_done(capsys):
    bar = progress_bar(total=4, initial=3, desc="calibrate", unit="block")
    bar.update(1)
    bar.close()
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "calibrate: 3/4 blocks (75%)", "calibrate: 4/4 blocks (100%)"]
