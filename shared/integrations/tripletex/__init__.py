"""Tripletex API v2 (Norway): the client the export worker uses to book vouchers."""

from shared.integrations.tripletex.client import RateLimitStatus, TripletexClient, TripletexOptions
from shared.integrations.tripletex.models import WhoAmI

__all__ = ["RateLimitStatus", "TripletexClient", "TripletexOptions", "WhoAmI"]
