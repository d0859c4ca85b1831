"""Zoo families: each module registers its models with ``batchforge.export.registry``."""
