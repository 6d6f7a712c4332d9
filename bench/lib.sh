# What the bench scripts share; sourced (`. bench/lib.sh`) from the repository's root.

# wait_for_hold FILE LOADER TENTHS: waits until `wsload --hold`, writing to FILE, says
# `holding` (every connection is open), or the loader (pid LOADER) exits, or TENTHS tenths
# of a second pass; then 2 s more, so that the RSS read next is that of idle connections.
wait_for_hold() {
  local file=$1 loader=$2 limit=$3 waited=0
  until grep -q holding "$file" || [ "$waited" -ge "$limit" ] || ! kill -0 "$loader" 2>/dev/null; do
    sleep 0.1; waited=$(( waited + 1 ))
  done
  sleep 2
}
