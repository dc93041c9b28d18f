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
