"""The job worker: claims queued fine-tuning jobs, trains each in a child process, records the outcome."""

from tunery.worker.runner import BackgroundWorker, Worker, WorkerSettings, start_background_worker

__all__ = ["BackgroundWorker", "Worker", "WorkerSettings", "start_background_worker"]
