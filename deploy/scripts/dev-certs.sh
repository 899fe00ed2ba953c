#!/usr/bin/env bash
# Development certificates for the example configuration (config/): a CA per
# administration, TLS server and client certificates and a signing certificate.
# Written under certs/ (git-ignored); existing ones are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAAGW=${MAAGW:-.venv/bin/maagw}
for id in XA XB; do
  lower=$(echo "$id" | tr 'A-Z' 'a-z')
  dir=certs/$id
  if [ -f "$dir/certs/signing.pem" ]; then
    echo "certs/$id exists; kept"
    continue
  fi
  "$MAAGW" certs init-ca --name "$id Customs Gateway CA (development)" --out "$dir/ca"
  "$MAAGW" certs issue --ca "$dir/ca" --kind tls-server --name tls-server \
    --san "gw.$lower.test" --san localhost --san 127.0.0.1 --out "$dir/certs"
  "$MAAGW" certs issue --ca "$dir/ca" --kind tls-client --name tls-client --out "$dir/certs"
  "$MAAGW" certs issue --ca "$dir/ca" --kind signing --name signing --out "$dir/certs"
done
