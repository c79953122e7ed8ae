"""Webhook receivers: store the delivery, queue the work, answer 200 at once."""
