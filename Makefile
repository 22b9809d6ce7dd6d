# tsvol: build, test and package the managed Docker plugin.
# `make plugin` creates and enables the managed plugin `tsvol` from plugin/ (replacing an old one; volume
# data lives in the host directory bound at TSVOL_DATA, so it survives).
PLUGIN ?= tsvol
REGISTRY ?=
DOCKER ?= /usr/bin/docker
ROOTFS := plugin/rootfs

.PHONY: deps build test rootfs plugin plugin-csi enable disable push clean e2e bench

# The Debian packages of scripts/deps.txt that are missing: `make deps` for build, tests and benches,
# `make deps DEPS="build e2e"` for the end-to-end suite's Docker engine, registry and compose too,
# `make deps DEPS="build e2e cluster"` for the cluster suite's GlusterFS and iproute2 as well.
DEPS ?= build
deps:
	scripts/install-deps.sh $(DEPS)

build:
	[ -d node_modules ] || npm ci --no-audit --no-fund
	npm run build

test:
	npm test

rootfs: build
	plugin/build-rootfs.sh $(ROOTFS)
	cp config.json plugin/config.json

# The data root is root-only (#9 §5): no path into volume data for other users. install -d also
# tightens an existing directory (and the plugin does at start-up).
plugin: rootfs
	-$(DOCKER) plugin disable -f $(PLUGIN) 2>/dev/null
	-$(DOCKER) plugin rm -f $(PLUGIN) 2>/dev/null
	install -d -m 0700 /var/lib/tsvol
	$(DOCKER) plugin create $(PLUGIN) plugin
	$(DOCKER) plugin enable $(PLUGIN)

# The same rootfs as a CSI plugin for Swarm cluster volumes (Docker >= 23, config-csi.json; #12). Written
# from Docker's docs and not exercised here (README "CSI"). Its own data root: one server per data root.
PLUGIN_CSI ?= tsvol-csi
plugin-csi: rootfs
	rm -rf plugin-csi && mkdir plugin-csi
	cp -al $(ROOTFS) plugin-csi/rootfs
	cp config-csi.json plugin-csi/config.json
	-$(DOCKER) plugin disable -f $(PLUGIN_CSI) 2>/dev/null
	-$(DOCKER) plugin rm -f $(PLUGIN_CSI) 2>/dev/null
	install -d -m 0700 /var/lib/tsvol-csi
	$(DOCKER) plugin create $(PLUGIN_CSI) plugin-csi
	$(DOCKER) plugin enable $(PLUGIN_CSI)

enable:
	$(DOCKER) plugin enable $(PLUGIN)

disable:
	$(DOCKER) plugin disable $(PLUGIN)

# make push REGISTRY=127.0.0.1:5000 → pushes REGISTRY/tsvol:latest (a plugin is pushed under its own name).
push: rootfs
	@test -n "$(REGISTRY)" || { echo "make push needs REGISTRY=host:port" >&2; exit 2; }
	-$(DOCKER) plugin rm -f $(REGISTRY)/$(PLUGIN):latest 2>/dev/null
	$(DOCKER) plugin create $(REGISTRY)/$(PLUGIN):latest plugin
	$(DOCKER) plugin push $(REGISTRY)/$(PLUGIN):latest

e2e: build
	npx ava test/e2e-*.test.ts

bench: build
	npm run bench

clean:
	rm -rf dist plugin/rootfs plugin/config.json plugin-csi
