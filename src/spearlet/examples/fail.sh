#!/bin/sh
echo "something went wrong: the example always fails" >&2
exit 3
