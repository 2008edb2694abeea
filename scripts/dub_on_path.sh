# Sourced by the GPU scripts: make `import dub.model` work where dub is not installed. The
# repository's model/, workflows/ and manifests/ become dub.* only through the package install
# (pyproject's package-dir); without one (a bare GPU image, no build tools, no network) the
# same layout is copied into a temporary folder put on PYTHONPATH.
if ! python3 -c "import dub.model" >/dev/null 2>&1; then
    dub_site=$(mktemp -d)
    mkdir -p "$dub_site/dub"
    cp -r dub/. "$dub_site/dub/"
    for folder in model workflows manifests; do cp -r "$folder" "$dub_site/dub/$folder"; done
    export PYTHONPATH="$dub_site${PYTHONPATH:+:$PYTHONPATH}"
fi
