#!/bin/sh
# Third-party front-end assets from the npm registry into static/vendor (never committed).
# Used by `make assets` and by the Dockerfile's asset stage.
set -eu
dest=${1:-static/vendor}
npm ci --no-audit --no-fund --silent
mkdir -p "$dest"
cp node_modules/htmx.org/dist/htmx.min.js "$dest/"
cp node_modules/chart.js/dist/chart.umd.js "$dest/"
cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css "$dest/"
