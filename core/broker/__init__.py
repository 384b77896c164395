"""The broker every process shares: its Celery configuration (`routing`), the embedded
filesystem transport (`filesystem`) and the port that sends work to the workers (`queue`)."""
