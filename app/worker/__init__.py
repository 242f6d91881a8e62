"""The job worker (`redline worker`): claims queued jobs and runs each as a training subprocess."""
