"""Decision rules: scores to actions."""

from joules.decide.rules import Comparison, Rule, RuleSet

__all__ = ["Comparison", "Rule", "RuleSet"]
