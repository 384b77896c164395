"""Code every pneumoscan process shares: settings, database, storage, imaging, registry."""
