"""Errors meant for people.

Every error a user can cause or fix is a :class:`VzError`.  The command-line
front ends print it as ``<prog>: error: <message>`` followed by the hint, and
exit non-zero without a traceback.  Anything else that escapes is a bug.
"""

from __future__ import annotations


class VzError(Exception):
    """An error a user can act on."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(VzError):
    """Wrong command-line use."""

    exit_code = 2


class TemplateError(VzError):
    """A template file is malformed.  Names the file, line and key path."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<template>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.file = file
        self.line = line
        self.key = key


class ConfigError(VzError):
    """A configuration setting is missing or wrong."""


class GpgError(VzError):
    """A key, a signature or a fingerprint did not check out."""


class ArchiveError(VzError):
    """An archive could not be read or written."""


class UnsafeArchiveError(ArchiveError):
    """An archive entry would escape the target tree or is otherwise refused."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(
            f"unsafe archive entry {entry!r}: {reason}",
            hint="the archive was refused and nothing was unpacked",
        )
        self.entry = entry
        self.reason = reason


class StoreError(VzError):
    """The cache store refused an operation."""


class BuildError(VzError):
    """A build step failed.  Names the step and where its log is kept.

    *step* is what failed (a command such as ``mmdebstrap``, a check such as
    ``keys``).  The pipeline names its own step (``bootstrap``) as the error
    leaves it (:meth:`in_step`): ``build_step``, and the message begins with it
    when it is not *step* itself.
    """

    def __init__(self, step: str, message: str, *, log: str | None = None,
                 hint: str | None = None) -> None:
        self.step = step
        self.detail = message
        self.log = log
        self.build_step: str | None = None
        super().__init__(self._text(), hint=hint)

    def in_step(self, name: str) -> None:
        """Record that the error came out of the pipeline's step *name* (the
        first one named wins: it is the innermost)."""
        if self.build_step is None:
            self.build_step = name
            self.message = self._text()
            self.args = (self.message,)

    def _text(self) -> str:
        text = f"build step {self.step!r} failed: {self.detail}"
        if self.build_step is not None and self.build_step != self.step:
            text = f"{self.build_step}: {text}"
        if self.log:
            text += f"\n  log: {self.log}"
        return text


class MirrorError(VzError):
    """Publishing to or pulling from a mirror failed."""


class VeError(VzError):
    """A runtime (vzctl) operation on a VE failed."""


# -- vzctl's exit codes --------------------------------------------------------------
# Each class below is one of OpenVZ's vzctl exit codes (include/vzerror.h of vzctl),
# so that scripts written for vzctl read the same status.  A plain VeError is 1.

class ExecError(VeError):
    """A command could not be run in the VE (VZ_COMMAND_EXECUTION_ERROR)."""

    exit_code = 8


class ChkpntError(VeError):
    """A checkpoint failed or cannot be taken (VZ_CHKPNT_ERROR)."""

    exit_code = 16


class RestoreError(VeError):
    """A restore failed or cannot be done (VZ_RESTORE_ERROR)."""

    exit_code = 17


class VeLockedError(VeError):
    """Another vzctl holds the VE's lock (VZ_LOCKED)."""

    exit_code = 9


class NoVeConfigError(VeError):
    """The VE has no CTID.conf: it does not exist (VZ_NOVECONFIG)."""

    exit_code = 14


class VeNotRunningError(VeError):
    """The operation needs a running VE (VZ_VE_NOT_RUNNING)."""

    exit_code = 31


class VeRunningError(VeError):
    """The operation needs a stopped VE (VZ_VE_RUNNING)."""

    exit_code = 32


class VeExistsError(VeError):
    """create: the VE, or its private area, already exists (VZ_FS_PRVT_AREA_EXIST)."""

    exit_code = 44


class PasswordError(VeError):
    """set --userpasswd: the VE's chpasswd failed (VZ_CHANGEPASS)."""

    exit_code = 74


class IpInUseError(VeError):
    """The address is another VE's or the host's (VZ_IP_INUSE)."""

    exit_code = 78


class VeConfigError(ConfigError):
    """One VE's CTID.conf cannot be used (VZ_INVALID_CONFIG): a bad value, or a layout
    this vzctl does not run (simfs, ploop).  :attr:`ctid` names the VE, so that a
    caller going over every VE (vzlist -a, vzctl boot) reports this one and goes on
    with the others."""

    exit_code = 85

    def __init__(self, ctid: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.ctid = ctid


class NoTemplateError(VeError):
    """create: no cache of that name (VZ_OSTEMPLATE_NOT_FOUND)."""

    exit_code = 91


class NameInUseError(VeError):
    """set --name: another VE has that name (VZ_SET_NAME_ERROR)."""

    exit_code = 131
