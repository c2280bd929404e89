#!/bin/sh
# A command agent that reports the skills it finds in its worktree, then changes one file.
set -eu
cat > /dev/null
for f in .agents/skills/*/SKILL.md .claude/skills/*/SKILL.md; do
  [ -e "$f" ] && echo "skill $f: $(sed -n 's/^name: //p' "$f")"
done
echo "changed by the agent" >> README.md
