"""Plugin output: text, long text and performance data; exit code to state.

Pure functions, shared by the executor processes (which parse plugin output before
answering) and the router (which runs the ``dummy`` command in-process).

Output format (Nagios plugin API, as Icinga 2 reads it)::

    TEXT | PERFDATA                 first line: status text, then perfdata after '|'
    LONG TEXT LINE 1                more lines: long text
    LONG TEXT LINE 2 | PERFDATA     a later '|' starts more perfdata ...
    PERFDATA                        ... and every following line is perfdata too

A ``|`` only separates performance data when an ``=`` follows it on the same line: that
is Icinga's test (``PluginUtility::ParseCheckOutput``), and it keeps outputs such as
``"a | b"`` intact. Icinga 2.13 only takes the part after ``|`` of each line and keeps
later lines without a ``|`` as text; the plugin API (and this module) treats every line
after the second ``|`` as performance data. For output that has a ``|`` on each
perfdata line, both give the same result.

The text keeps the spaces around the ``|`` exactly as Icinga does (it does not trim the
text part), and the returned output is text and long text joined by ``\\n``.
"""

from __future__ import annotations

__all__ = [
    "STATE_OK",
    "STATE_WARNING",
    "STATE_CRITICAL",
    "STATE_UNKNOWN",
    "HOST_UP",
    "HOST_DOWN",
    "exit_status_to_state",
    "host_state",
    "parse_check_output",
    "split_perfdata",
    "parse_plugin_output",
]

STATE_OK = 0
STATE_WARNING = 1
STATE_CRITICAL = 2
STATE_UNKNOWN = 3
HOST_UP = 0
HOST_DOWN = 1


def exit_status_to_state(exit_status: int) -> int:
    """Service state of a plugin exit code (Icinga ``PluginUtility::ExitStatusToState``).

    0 OK, 1 WARNING, 2 CRITICAL, anything else (3, 126, 128, 255, negative) UNKNOWN.
    """
    if exit_status in (0, 1, 2):
        return exit_status
    return STATE_UNKNOWN


def host_state(state: int) -> int:
    """Host state (0 UP, 1 DOWN) of a service state (Icinga ``Host::CalculateState``).

    OK and WARNING are UP, CRITICAL and UNKNOWN are DOWN. Icinga keeps the *service*
    state in the check result of a host and derives the host state when it reads it, so
    this is for display; :func:`checkers.messages.outcome_to_cr` does not apply it.
    """
    return HOST_UP if state in (STATE_OK, STATE_WARNING) else HOST_DOWN


def _perf_pipe(line: str) -> int:
    """Index of the ``|`` that starts performance data on ``line``, or -1.

    Like Icinga: the first ``|``, and only when an ``=`` follows it somewhere.
    """
    index = line.find("|")
    if index >= 0 and line.find("=", index) >= 0:
        return index
    return -1


def parse_check_output(output: str) -> tuple[str, str]:
    """Split plugin output into (text with long text, performance data string).

    ``output`` is used as given; :func:`parse_plugin_output` trims it first, as Icinga
    trims the output of a process (but not the text of the ``dummy`` command).
    """
    if "\r" in output:
        output = output.replace("\r\n", "\n").replace("\r", "\n")
    lines = output.split("\n")
    text: list[str] = []
    perf: list[str] = []
    in_perf_block = False        # after the second '|': every line is perfdata
    for number, line in enumerate(lines):
        if in_perf_block:
            perf.append(line)
            continue
        pipe = _perf_pipe(line)
        if pipe < 0:
            text.append(line)
            continue
        text.append(line[:pipe])
        perf.append(line[pipe + 1:])
        if number > 0:
            in_perf_block = True
    perfdata = " ".join(part.strip() for part in perf if part.strip())
    return "\n".join(text), perfdata


def split_perfdata(perfdata: str) -> list[str]:
    """Split a performance data string into ``label=value`` items.

    Follows Icinga's ``PluginUtility::SplitPerfdata``: a label runs up to the ``=``
    (so unquoted labels may hold spaces), the value up to the next space; quotes around a
    label are dropped and put back only when the label contains a space; a ``check_multi``
    label ``prefix::name`` makes ``prefix::`` the prefix of the following labels that have
    none. Two deliberate differences, both on input Icinga mangles: runs of spaces
    between items are skipped (Icinga turns the extra space into part of the next label),
    and a quoted label may contain ``=`` (Icinga cuts it there). ``''`` inside a quoted
    label is a literal quote, as in the plugin guidelines.

    The items together are at most twice the text and 4 KiB: the prefix copied into
    every later label let 100 KB of output become 70 MB of items, a reply the pool
    refused, and the executor was killed with every check it ran (review). Items beyond
    that are dropped.
    """
    result: list[str] = []
    text = perfdata.strip()
    length = len(text)
    budget = 2 * length + 4096
    pos = 0
    multi_prefix = ""
    while pos < length and budget > 0:
        while pos < length and text[pos] == " ":
            pos += 1
        if pos >= length:
            break
        if text[pos] == "'":
            label, eq = _quoted_label(text, pos)
            if eq < 0:
                break
        else:
            eq = text.find("=", pos)
            if eq < 0:
                break
            label = text[pos:eq]
        end = text.find(" ", eq)
        if end < 0:
            end = length
        value = text[eq + 1:end]
        multi_index = label.rfind("::")
        if multi_index >= 0:
            multi_prefix = ""
        if multi_prefix:
            label = f"{multi_prefix}::{label}"
        if " " in label or "=" in label:
            quoted = label.replace("'", "''")
            item = f"'{quoted}'={value}"
        else:
            item = f"{label}={value}"
        budget -= len(item)
        if budget < 0:
            break
        result.append(item)
        if multi_index >= 0:
            multi_prefix = label[:multi_index]
        pos = end + 1
    return result


def _quoted_label(text: str, start: int) -> tuple[str, int]:
    """Label of a quoted item starting at ``text[start] == "'"`` and the index of its ``=``.

    Returns (label, -1) when no ``=`` follows. An unterminated quote falls back to
    Icinga's rule (label = everything up to the first ``=``).
    """
    pos = start + 1
    parts: list[str] = []
    length = len(text)
    while pos < length:
        close = text.find("'", pos)
        if close < 0:
            break
        parts.append(text[pos:close])
        if close + 1 < length and text[close + 1] == "'":      # '' is a literal quote
            parts.append("'")
            pos = close + 2
            continue
        if close + 1 < length and text[close + 1] == "=":
            return "".join(parts), close + 1
        break
    eq = text.find("=", start)
    if eq < 0:
        return "", -1
    label = text[start:eq]
    if len(label) > 2 and label[0] == "'" and label[-1] == "'":
        label = label[1:-1]
    return label, eq


def parse_plugin_output(raw: str) -> tuple[str, list[str]]:
    """Output text and performance data list of a finished plugin process.

    Icinga (``PluginCheckTask::ProcessFinishedHandler``) trims the process output, then
    parses it and splits the performance data.
    """
    text, perfdata = parse_check_output(raw.strip())
    return text, split_perfdata(perfdata)
