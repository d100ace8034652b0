"""The recipe: what the user wrote, validated into frozen data."""

from .schema import BASE_FIELDS, POLICY_FIELDS_FOR_OVERRIDE, RULE_FIELDS, Matcher, Policy, Recipe, Rule, parse_recipe

__all__ = ["BASE_FIELDS", "POLICY_FIELDS_FOR_OVERRIDE", "RULE_FIELDS", "Matcher", "Policy", "Recipe", "Rule", "parse_recipe"]
