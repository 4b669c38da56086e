"""Embedded demo dataset built offline from data shipped inside dipy."""
