"""The feed source as a system that is told nothing (``ReportGranularity.NONE``): the engine
records outcomes and completes units, and never calls ``send_reports``."""

from shared.integrations.registry import ReportGranularity
from tests.plugins.feed_source import entry

SYSTEM = entry("feed_silent", "Silent Test Feed", ReportGranularity.NONE)
