"""Dynamic Resource Allocation (`resource.k8s.io/v1`): ResourceSlices and DeviceClasses
read into the cluster view, ResourceClaims turned into GPU requests, and the allocation
and reservation writes kube-scheduler's DynamicResources plugin would make."""
