# The reference gateway from our own static binary (FROM scratch: nothing to pull).
# Built by docker/build-images.sh.
FROM scratch
COPY gateway-bin /gateway-bin
EXPOSE 7000 7001
ENTRYPOINT ["/gateway-bin"]
CMD ["--public", "0.0.0.0:7000", "--admin", "0.0.0.0:7001", "demo"]
