#!/usr/bin/env bash
# Creates a CA and the metrics API's serving certificate for overlays/self-signed.
# The names are those the aggregation layer dials: <service>.<namespace>.svc.
set -euo pipefail
dir="${1:-$(dirname "${BASH_SOURCE[0]}")/tls}"
service=podmeter-metrics-api
namespace=podmeter-system
days=${DAYS:-825}
mkdir -p "$dir"
cd "$dir"
if [ -f tls.crt ] && [ -f tls.key ] && [ -f ca.crt ]; then
  echo "certificates exist in $dir (delete them to make new ones)"
  exit 0
fi
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=podmeter-metrics-api-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$service.$namespace.svc" \
  -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
  "$service" "$service" "$namespace" "$service" "$namespace" "$service" "$namespace" > ext.cnf
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -extfile ext.cnf -out tls.crt 2>/dev/null
rm -f tls.csr ext.cnf ca.srl ca.key
echo "wrote $dir/{ca.crt,tls.crt,tls.key}"
