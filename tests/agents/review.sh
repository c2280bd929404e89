#!/bin/sh
# A command agent that answers with a structured review in $NIGHTSHIFT_OUTPUT_DIR/review.json ($1 = good)
# or a malformed one ($1 = bad), and a final message in message.md.
set -eu
cat > /dev/null
if [ "$1" = good ]; then
  cat > "$NIGHTSHIFT_OUTPUT_DIR/review.json" <<'JSON'
{"summary": "Two things to fix.",
 "comments": [
   {"path": "README.md", "line": 1, "body": "Say what the project does."},
   {"path": "README.md", "line": 1, "side": "LEFT", "body": "The old title was clearer."}
 ]}
JSON
else
  echo '{"summary": "x", "comments": [{"path": "README.md", "line": "one", "body": "b"}]}' > "$NIGHTSHIFT_OUTPUT_DIR/review.json"
fi
echo "written to message.md" > "$NIGHTSHIFT_OUTPUT_DIR/message.md"
echo "stdout is not the message"
echo "home is $HOME" >&2
