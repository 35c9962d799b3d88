# Shared by up.sh and down.sh: where the real-cluster tier keeps its state, and
# its addresses. Private ranges that exist only on this machine.
STATE=${MESHLITE_CLUSTER_STATE:-/var/lib/meshlite-cluster}
RUN=/run/meshlite-cluster
NODE=meshlite-node
BRIDGE=mlcni0
NODE_IP=10.213.0.1
POD_CIDR=10.213.0.0/24
SVC_CIDR=10.214.0.0/16
API_SVC_IP=10.214.0.1
