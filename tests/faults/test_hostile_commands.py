"""Hostile values in command templates never run as code (issue 15, point 9).

Values with ``$(...)``, backticks, quotes, ``;``, newlines, ``EOF`` lines and unicode go
through real runs, bare, in double and single quotes, inside ``$(...)``, as arguments of a
nested shell, and through the environment; file names from ``glob()`` and lines from
``lines()`` go through ``shoal run FILE.yaml``. A marker file would appear if anything ran.
Templates that put a value where no quoting helps (here-documents, ``sh -c "..."``, ``eval``,
``ssh``...) are refused when they are defined, before anything runs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import shoal
from shoal.errors import DefinitionError

from .helpers import cli, pwned, run_dirs


def hostile(d: Path) -> list[str]:
    """Values that run code (a marker file under ``d``, or the removal of ``d/canary``) if a
    shell reads them as code."""
    m = d / "PWNED"
    return [
        f"$(touch {m}1)",
        f"`touch {m}2`",
        f"'; rm -rf {d}/canary; touch {m}3; '",
        f'"; touch {m}4; "',
        f"a\ntouch {m}5\n",
        f"EOF\ntouch {m}6\nEOF",
        f"x' \"$(touch {m}7)\" '\\",
        "ünïcødé ✓ 日本 $HOME ${HOME} * ? ~ # \\ \t end",
        f"-n $(touch {m}8)",
    ]


def setup(tmp_path: Path) -> Path:
    (tmp_path / "canary").mkdir()
    return tmp_path


def assert_nothing_ran(d: Path) -> None:
    assert not pwned(d), "a hostile value ran as code"
    assert (d / "canary").is_dir(), "a hostile value removed the canary folder"


# -- real runs of templates that are accepted ---------------------------------------------------
ACCEPTED = {
    "bare": ("printf %s {x}", None),
    "bare, shell": ("printf %s {x} | cat", None),
    "double quotes": ('printf %s "{x}"', None),
    "double quotes, shell": ('printf %s "{x}" | cat', None),
    "single quotes": ("printf %s '{x}'", None),
    "single quotes, shell": ("printf %s 'v={x}' | cat", "v="),
    "inside $(...) in double quotes": ('printf %s "$(printf %s {x})"', "strip"),
    "argument of a nested shell": ("sh -c 'printf %s \"$1\"' sh {x}", None),
    "argument of bash -c, options first": ("bash -ec 'printf %s \"$1\"' bash {x}", None),
    "environment, nested shell": ("sh -c 'printf %s \"$X\"'", "env"),
    "environment, here-document": ("cat <<EOF\n$X\nEOF", "env+nl"),
    "environment, <<- here-document": ("cat <<-EOF\n\t$X\n\tEOF", "env+nl"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_hostile_values_stay_data_in_real_runs(case: str, tmp_path: Path) -> None:
    d = setup(tmp_path)
    template, how = ACCEPTED[case]
    values = hostile(d)
    with shoal.Workflow("hostile") as wf:
        cmd = shoal.command(template, workdir=str(d))
        if how in ("env", "env+nl"):  # the value in the environment, "$X" in the template
            tasks = [cmd(env={"X": v}) for v in values]
        else:
            tasks = [cmd(x=v) for v in values]
    run = wf.run(base=d / "runs")
    assert run.ok, run.failures()
    for v, t in zip(values, tasks, strict=True):
        out = run.result(t)["stdout"]
        if how == "strip":  # $(...) removes trailing newlines
            assert out == v.rstrip("\n")
        elif how == "env+nl":
            assert out == v + "\n"
        else:
            assert out == (how if how == "v=" else "") + v
    assert_nothing_ran(d)


# -- templates refused when they are defined ----------------------------------------------------
REFUSED = {
    "heredoc": ("cat > in.lmp <<EOF\nvariable T equal {x}\nEOF", "here-document"),
    "quoted heredoc": ("cat > in.lmp <<'EOF'\nvariable T equal {x}\nEOF", "here-document"),
    "<<- heredoc": ("cat > in.lmp <<-END\n\tT {x}\n\tEND\necho done", "here-document"),
    "heredoc inside $(...)": ('echo "$(cat <<EOF\n{x}\nEOF\n)"', "here-document"),
    "heredoc delimiter": ("cat <<{x}\nbody\n", "delimiter"),
    "bash -c, double quotes": ('bash -c "echo {x}"', "`bash -c`"),
    "sh -c, single quotes": ("sh -c 'echo {x}; true'", "`sh -c`"),
    "sh -c, through wrappers": ("env A=1 timeout 5 /bin/sh -xc 'echo {x}' | cat", "`sh -c`"),
    "bash -lc": ('srun bash -lc "cd run && lmp -var T {x}"', "`bash -c`"),
    "eval": ("eval echo {x}", "`eval`"),
    "ssh": ('ssh -p 2222 host "cat {x}"', "`ssh`"),
    "watch": ("watch -n 1 ls {x}", "`watch`"),
    "trap": ("trap 'rm -f {x}' EXIT; sleep 1", "`trap`"),
    "su -c": ("su nobody -c 'ls {x}'", "`su -c`"),
    "python -c": ('python3 -c "print({x})"', "`python -c`"),
    "perl -lne": ("perl -lne 'print \"{x}\"' data.txt", "`perl -e`"),
    "awk program": ("awk '{{print $1 * {x}}}' data.txt", "`awk`"),
    "backticks": ("echo `basename {x}`", "backticks"),
    "${...}": ('echo "${{X:-{x}}}"', "${...}"),
    "$'...'": ("echo $'{x}'", "$'...'"),
    "comment": ("echo hi # {x}\necho bye", "comment"),
    "backslash before": ("echo \\{x} | cat", "backslash"),
    "dollar before": ("echo ${x}", "after a $"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsafe_placeholders_are_refused_at_definition(case: str, tmp_path: Path) -> None:
    template, what = REFUSED[case]
    with pytest.raises(DefinitionError) as err:
        shoal.command(template)
    message = str(err.value)
    assert message.startswith(f"command template {template!r}: {{x}} ")  # what and where
    assert what in message
    assert "\n" not in message.replace(template, "")  # one line besides the template
    assert not list(tmp_path.iterdir())  # nothing made, nothing ran


@pytest.mark.parametrize("case", ["heredoc", "bash -c, double quotes", "python -c"])
def test_the_refusal_says_how_to_write_it_instead(case: str) -> None:
    with pytest.raises(DefinitionError) as err:
        shoal.command(REFUSED[case][0])
    message = str(err.value)
    assert 'env={"X": value}' in message and 'env: {X: "{x}"}' in message
    if case != "heredoc":
        assert "sh -c 'echo \"$1\"' sh {x}" in message  # or as an argument after the code


@pytest.mark.parametrize(
    "template",
    [
        "sh -c 'echo \"$1\"' sh {x}",  # positional arguments of a nested shell are data
        "bash run.sh {x}",
        "python3 script.py --T {x}",
        "awk -v t={x} '{{print t}}' data.txt",
        "ssh host ls",
        "cat <<EOF > in.lmp && lmp -in in.lmp -var T {x}\nvariable T index 300\nEOF",
        "echo {x} # a comment",  # no shell syntax: no comment either
        "echo $(( {x} + 1 ))",
        'echo "\\\\{x}"',  # an escaped backslash, then the value
    ],
)
def test_safe_placeholders_are_accepted(template: str) -> None:
    shoal.command(template)


# -- config files: glob() file names and lines() through `shoal run` ----------------------------
NAMES = [
    "$(touch PWNED1)",
    "`touch PWNED2`",
    "'; rm -rf canary; touch PWNED3; '",
    '"; touch PWNED4; "',
    "a\ntouch PWNED5",
    "EOF\ntouch PWNED6\nEOF",
    "ünïcødé ✓ 日本 $HOME * ? ~ #",
]

ACCEPTED_YAML = """\
name: hostile
groups:
  quoted:
    command: "printf '%s|%s|%s' {f} \\"{f}\\" '{f}' > out/q-{index}"
    sweep: {f: SOURCE}
  positional:
    command: "sh -c 'printf %s \\"$1\\" > \\"$2\\"' sh {f} out/p-{index}"
    sweep: {f: SOURCE}
  environment:
    command: |
      cat > out/e-{index} <<EOF
      $F
      EOF
    env: {F: "{f}"}
    sweep: {f: SOURCE}
"""


def _expected_files(d: Path, values: list[str]) -> None:
    for i, v in enumerate(values):
        assert (d / "out" / f"q-{i}").read_text() == f"{v}|{v}|{v}"
        assert (d / "out" / f"e-{i}").read_text() == v + "\n"
        assert (d / "out" / f"p-{i}").read_text() == v


def test_glob_file_names_run_as_data_through_shoal_run(tmp_path: Path) -> None:
    d = setup(tmp_path)
    (d / "in").mkdir()
    (d / "out").mkdir()
    for name in NAMES:
        (d / "in" / name).write_text(f"content of {name}")
    (d / "c.yaml").write_text(ACCEPTED_YAML.replace("SOURCE", "'glob(\"in/*\")'"))
    p = cli(d, "run", "c.yaml")
    assert p.returncode == 0, p.stderr
    _expected_files(d, sorted(f"in/{n}" for n in NAMES))
    assert_nothing_ran(d)


def test_lines_run_as_data_through_shoal_run(tmp_path: Path) -> None:
    d = setup(tmp_path)
    (d / "out").mkdir()
    lines = [n for n in NAMES if "\n" not in n] + ["EOF", "  -n  "]
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    (d / "c.yaml").write_text(ACCEPTED_YAML.replace("SOURCE", "'lines(\"list.txt\")'"))
    p = cli(d, "run", "c.yaml")
    assert p.returncode == 0, p.stderr
    _expected_files(d, [x.strip() for x in lines])
    assert_nothing_ran(d)


REFUSED_YAML = """\
name: hostile
groups:
  setup:
    command: "echo ready"
  md:
    command: |
      cat > in.lmp <<EOF
      read_data {f}
      EOF
      lmp -in in.lmp
    sweep:
      f: 'glob("in/*")'
    after: setup
"""


@pytest.mark.parametrize("verb", ["plan", "run"])
def test_a_refused_template_in_a_config_exits_2_before_anything_runs(
    verb: str, tmp_path: Path
) -> None:
    d = setup(tmp_path)
    (d / "in").mkdir()
    for name in NAMES:
        (d / "in" / name).write_text("x")
    (d / "c.yaml").write_text(REFUSED_YAML)
    p = cli(d, verb, "c.yaml")
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert err.startswith("shoal: ")
    assert "c.yaml:6: groups.md.command: command template" in err
    assert "{f} is in the body of a here-document (<<EOF)" in err
    assert 'env: {X: "{f}"}' in err
    assert not run_dirs(d) and not p.stdout
    assert_nothing_ran(d)


def test_nested_shell_in_a_config_is_refused_with_the_fix(tmp_path: Path) -> None:
    d = setup(tmp_path)
    (d / "c.yaml").write_text(
        textwrap.dedent(
            """\
            groups:
              g:
                command: bash -c "process {v}"
                sweep: {v: [a, b]}
            """
        )
    )
    p = cli(d, "run", "c.yaml")
    assert p.returncode == 2
    assert "c.yaml:3: groups.g.command: command template 'bash -c \"process {v}\"': {v} is " in (
        p.stderr
    )
    assert "sh -c 'echo \"$1\"' sh {v}" in p.stderr
    assert not run_dirs(d)
