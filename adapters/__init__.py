"""Adapters: the edges of the gateway (RabbitMQ, MongoDB, clock, HTTP senders).

Each real adapter has an embedded in-process twin beside it; ``adapters.factory``
chooses between them from the settings.
"""
