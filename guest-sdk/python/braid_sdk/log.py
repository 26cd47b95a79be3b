"""Logging through the host: each call is one line of the step execution's logs (lines past
the host's cap are dropped and counted; logging never fails)."""

from wit_world.imports import host


def trace(message: str) -> None:
    host.log(host.LogLevel.TRACE, str(message))


def debug(message: str) -> None:
    host.log(host.LogLevel.DEBUG, str(message))


def info(message: str) -> None:
    host.log(host.LogLevel.INFO, str(message))


def warn(message: str) -> None:
    host.log(host.LogLevel.WARN, str(message))


def error(message: str) -> None:
    host.log(host.LogLevel.ERROR, str(message))
