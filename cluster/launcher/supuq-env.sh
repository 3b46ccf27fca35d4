# Sourced from ~/.bashrc on every node of the launcher recipes (aws-gpu.yaml, onprem.yaml): what Ray, the
# sweep driver and the trials need. Site values (bucket or NFS path, MLflow URI) come from ~/.supuq-site.sh,
# which the recipe writes; the defaults below are placeholders.
export PATH="$HOME/venv/bin:$PATH"
# Site settings written by the recipe's setup_commands (SUPUQ_STORAGE, MLFLOW_TRACKING_URI, ...).
[ -f "$HOME/.supuq-site.sh" ] && . "$HOME/.supuq-site.sh"
# Token authentication: the token itself is ~/.ray/auth_token (copied to every node by file_mounts).
export RAY_AUTH_MODE=token
# Shared trial storage: every node must reach it (Ray does not sync results to the head since 2.7).
#   AWS: s3://BUCKET/PREFIX with the instance profile's credentials.
#   S3-compatible (MinIO, Ceph): also export AWS_ENDPOINT_URL=http://minio.internal:9000 and credentials.
#   On-prem NFS: a path mounted at the same place on every node, e.g. /shared/supuq/ray_results.
export SUPUQ_STORAGE="${SUPUQ_STORAGE:-s3://my-supuq-bucket/sweeps}"
# MLflow tracking server (cluster/mlflow): trials log from the worker nodes, so it must be reachable from all
# of them; with the basic-auth app also export MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD here.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://mlflow.internal.example:5000}"

# supuq-sweep --dataset lidc --gpus-per-trial 0.25 [other supuq sweep options]
supuq-sweep() {
    supuq sweep --address auto --storage "$SUPUQ_STORAGE" --tracking-uri "$MLFLOW_TRACKING_URI" "$@"
}
