# The reference backend from our own static binary: nothing to pull (FROM scratch).
# Built by docker/build-images.sh (which .ci/run calls).
FROM scratch
COPY wsbackend /wsbackend
EXPOSE 7100
# Docker's health status gates membership in the gateway's Docker discovery. The probe
# checks the address in WSBACKEND_LISTEN, so set the id and address through the environment.
ENV WSBACKEND_LISTEN=0.0.0.0:7100 WSBACKEND_ID=backend
HEALTHCHECK --interval=1s --timeout=2s --start-period=1s --retries=2 \
  CMD ["/wsbackend", "--probe"]
ENTRYPOINT ["/wsbackend"]
