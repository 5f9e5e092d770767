"""Safety interlock layer: dose limits, plausibility checks, one latched fail-safe.

Independent of the controller: the controller proposes, `SafetySupervisor.check` decides, and
`LS4Writer` is the only path to the LS-4's control, setpoint and enable registers.
See docs/safety.md.
"""

from .limits import LimitsError, SafetyLimits
from .rules import RULES, Effect, Reset, Rule
from .supervisor import SafetySupervisor
from .types import SAFE_OUTPUT, Decision, Finding, Proposal, Severity
from .writer import LS4Writer, WriterError

__all__ = [
    "RULES",
    "SAFE_OUTPUT",
    "Decision",
    "Effect",
    "Finding",
    "LS4Writer",
    "LimitsError",
    "Proposal",
    "Reset",
    "Rule",
    "SafetyLimits",
    "SafetySupervisor",
    "Severity",
    "WriterError",
]
