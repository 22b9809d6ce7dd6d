# For users with an image registry: the same rootfs as `make rootfs`, built in a container.
#   docker build -t tsvol-rootfs . && id=$(docker create tsvol-rootfs true)
#   mkdir -p plugin/rootfs && docker export "$id" | tar -x -C plugin/rootfs && docker rm "$id"
#   cp config.json plugin/ && docker plugin create tsvol plugin
# Both paths run plugin/build-rootfs.sh, so they give the same layout.
FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build && plugin/build-rootfs.sh /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENTRYPOINT ["/usr/bin/node", "/opt/tsvol/dist/main.js"]
