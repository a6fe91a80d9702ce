"""Evaluation jobs: created over REST, run by workers through the service functions here."""
