"""etl service."""
