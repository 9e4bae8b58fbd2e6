"""`lightning run model train.py [arguments]`: the launch command of Lightning 1.x, kept working.

Lightning 2.6 ships its process launcher as `fabric run` and no `lightning` command. This console script hands
`lightning run model [launcher options] SCRIPT [script arguments]` over to that launcher (torchrun underneath).
The number of processes follows the script's own `--trainer.devices` / `--trainer.num_nodes` /
`--trainer.accelerator` when the launcher options do not name them, so that
`lightning run model train.py --trainer.devices=8` starts the eight processes the Trainer then expects.
"""

from __future__ import annotations

import sys

USAGE = "usage: lightning run model [--devices N --num-nodes N --main-port P ...] SCRIPT [script arguments]"
# The script's Trainer arguments -> the launcher option that starts as many processes.
TRAINER_TO_LAUNCHER = {"--trainer.devices": "--devices", "--trainer.num_nodes": "--num-nodes",
                       "--trainer.accelerator": "--accelerator"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] != ["run", "model"] or len(argv) < 3:
        print(USAGE, file=sys.stderr)
        return 2
    rest = argv[2:]
    script_at = next(
        (i for i, arg in enumerate(rest) if not arg.startswith("-") and _is_script(rest, i)), None
    )
    if script_at is None:
        print(f"lightning run model: no script given\n{USAGE}", file=sys.stderr)
        return 2
    launcher, script, script_args = rest[:script_at], rest[script_at], rest[script_at + 1 :]
    named = {arg.split("=", 1)[0].replace("_", "-") for arg in launcher if arg.startswith("--")}
    for trainer_key, option in TRAINER_TO_LAUNCHER.items():
        value = _value(script_args, trainer_key)
        if value is not None and option not in named:
            launcher += [f"{option}={value}"]
    from lightning.fabric.cli import _main as fabric

    fabric.main(["run", *launcher, script, *script_args], prog_name="lightning run model")
    return 0


def _is_script(args: list[str], i: int) -> bool:
    # A bare word after an option that takes a value (`--devices 2`) is that option's value, not the script.
    return i == 0 or not (args[i - 1].startswith("--") and "=" not in args[i - 1])


def _value(args: list[str], key: str) -> str | None:
    """The last value the script's arguments give `key` (`--key=value` or `--key value`)."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(f"{key}="):
            found = arg.split("=", 1)[1]
        elif arg == key and i + 1 < len(args):
            found = args[i + 1]
    return found


if __name__ == "__main__":
    sys.exit(main())
