"""Inserted command values stay one literal word wherever they sit in the template."""

from __future__ import annotations

import subprocess

import pytest

from shoal.spec.task import render_command

NASTY = 'x y $HOME "q" `ls` \\ it\'s ;|&'


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('echo "value is {v}"', f"value is {NASTY}"),
        ("echo 'value is {v}'", f"value is {NASTY}"),
        ("echo {v}", NASTY),
        ('echo "value is {v}" | cat', f"value is {NASTY}"),
        ("echo 'v={v}' | cat", f"v={NASTY}"),
        ("echo {v} | cat", NASTY),
    ],
)
def test_inserted_values_are_literal(template: str, expected: str) -> None:
    argv, shell = render_command(template, {"v": NASTY})
    assert shell == ("|" in template)
    cmd = ["/bin/sh", "-c", argv[0]] if shell else argv
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert out == expected + "\n"


def test_a_value_with_spaces_is_one_argument() -> None:
    argv, shell = render_command("prog --name {v} --n {n:03d}", {"v": "a b", "n": 7})
    assert (argv, shell) == (["prog", "--name", "a b", "--n", "007"], False)
