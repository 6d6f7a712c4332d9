# The reference backend from our own static binary: nothing to pull (FROM scratch).
# Built by docker/build-backend-image.sh (which .ci/run calls).
FROM scratch
COPY wsbackend /wsbackend
EXPOSE 7100
# Docker's health status gates membership in the gateway's Docker discovery.
HEALTHCHECK --interval=1s --timeout=2s --start-period=1s --retries=2 \
  CMD ["/wsbackend", "--probe", "http://127.0.0.1:7100/health"]
ENTRYPOINT ["/wsbackend"]
CMD ["--id", "backend", "--listen", "0.0.0.0:7100"]
