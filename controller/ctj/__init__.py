"""ContinualTrainingJobs: the custom resource, its windows, and the reconciler."""
