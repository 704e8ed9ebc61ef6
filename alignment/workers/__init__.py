"""What the machine side's Celery workers run: ids in, claim, work, record the outcome."""
