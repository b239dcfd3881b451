"""A Kubernetes cluster on 127.0.0.1 with fake GPU nodes: `gpufleet dev-cluster` for
users, and the same launcher, fleet and harness for the real-apiserver tests and the
benchmarks.

    pki       certificates and kubeconfigs
    launcher  etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK
    fleet     fake GPU nodes (labelled as GPU Feature Discovery would) and pods for them
    install   deploy/ applied server-side; a kubeconfig as the controller's ServiceAccount
    harness   controller replicas run against the cluster, their metrics, bind watching
    state     what `up` started and wrote, so `down` touches nothing else
    cli       gpufleet dev-cluster up|status|env|down
"""
