"""vzctl's exit codes are OpenVZ's (include/vzerror.h of vzctl), and the README's
table says which error gives which."""

from __future__ import annotations

import re
from pathlib import Path

from vzpkg.core import errors

README = Path(__file__).resolve().parents[2] / "README.md"

# vzerror.h of OpenVZ's vzctl: name -> value, for the errors vzctl here raises
VZERROR_H = {"VZ_COMMAND_EXECUTION_ERROR": 8, "VZ_LOCKED": 9, "VZ_NOVECONFIG": 14,
             "VZ_CHKPNT_ERROR": 16, "VZ_RESTORE_ERROR": 17,
             "VZ_VE_NOT_RUNNING": 31, "VZ_VE_RUNNING": 32, "VZ_FS_PRVT_AREA_EXIST": 44,
             "VZ_CHANGEPASS": 74, "VZ_IP_INUSE": 78, "VZ_INVALID_CONFIG": 85,
             "VZ_OSTEMPLATE_NOT_FOUND": 91, "VZ_SET_NAME_ERROR": 131}


def _classes() -> dict[str, type[errors.VzError]]:
    """Every error class that stands for a vzerror.h code (its docstring names it)."""
    out = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, errors.VzError) and obj.__doc__:
            m = re.search(r"\((VZ_[A-Z_]+)\)", obj.__doc__)
            if m:
                out[m.group(1)] = obj
    return out


def test_each_error_class_has_vzctls_code() -> None:
    classes = _classes()
    assert classes, "no error class names a vzerror.h code"
    for name, cls in classes.items():
        assert name in VZERROR_H, f"{cls.__name__} names {name}, not in the table here"
        assert cls.exit_code == VZERROR_H[name], (cls.__name__, cls.exit_code)
        assert issubclass(cls, errors.VzError)


def test_the_readme_table_lists_exactly_the_codes_vzctl_gives() -> None:
    rows = re.findall(r"^\| (\d+) \| (VZ_[A-Z_]+)? ?\|", README.read_text(), re.M)
    table = {name: int(code) for code, name in rows if name}
    assert table == {name: cls.exit_code for name, cls in _classes().items()}
    assert {int(code) for code, name in rows if not name} == {0, 1, 2}


def test_the_event_helpers_reply_keeps_the_error_and_its_code() -> None:
    """vzctl start through the event helper raises what the start raised in the helper:
    the same class, message, hint and exit status (the reply is JSON on a socket)."""
    import json

    from vzpkg.runtime.eventd import error_of, reply_of
    for cls in _classes().values():
        exc = (cls(42, "VE 42 is broken", hint="fix it") if issubclass(cls, errors.VeConfigError)
               else cls("it failed", hint="fix it"))
        back = error_of(json.loads(json.dumps(reply_of(exc))))
        assert type(back) is cls and back.exit_code == cls.exit_code
        assert str(back) == str(exc)
        if isinstance(exc, errors.VeConfigError):
            assert isinstance(back, errors.VeConfigError) and back.ctid == 42
    # a class the client does not know, or a build error, still keeps message and code
    odd = error_of({"ok": False, "error": "odd", "hint": None, "class": "NoSuchError",
                    "exit_code": 17})
    assert type(odd) is errors.VeError and odd.exit_code == 17 and str(odd) == "odd"
    built = errors.BuildError("step", "broke")
    back = error_of(json.loads(json.dumps(reply_of(built))))
    assert back.exit_code == built.exit_code and back.message == built.message
