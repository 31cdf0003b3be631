# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gatekeeper_global_optspecs
    string join \n c/config= h/help V/version
end

function __fish_gatekeeper_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gatekeeper_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gatekeeper_using_subcommand
    set -l cmd (__fish_gatekeeper_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -s V -l version -d 'Print version'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "run" -d 'Run the daemon in the foreground (systemd runs this)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "check" -d 'Validate the config, the allowlist file and the page directory; exit 0, or print errors and exit 2'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "on" -d 'Turn maintenance on (creates the toggle file atomically; idempotent)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "pause" -d 'Hold requests instead of answering them, while the app restarts; `resume` releases them'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "resume" -d 'Release held requests (the same as `off`)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "drain" -d 'Take this instance out of its load balancer: /.gatekeeper/health answers 503 (kept across restarts)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "undrain" -d 'Put this instance back: /.gatekeeper/health answers 200 again'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "off" -d 'Turn maintenance off (removes the toggle file; idempotent)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "status" -d 'Print "maintenance: on since <time> (<message>)" or "maintenance: off", and what else applies'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "explain" -d 'Print, step by step, how the daemon would decide a request: peer, forwarding header, client, allowlist, maintenance, credential'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "health" -d 'Exit 0 when the running daemon\'s admin endpoint answers /healthz (for container health checks)'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "man" -d 'Print the man page (roff, section 8), made from these commands and options'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "completions" -d 'Print the shell completion script for bash, zsh or fish'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "token" -d 'Named bypass tokens: one per person, with its own expiry, revocable alone'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "history" -d 'Print the last commands and flips from <toggle>.history, newest last'
complete -c gatekeeper -n "__fish_gatekeeper_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand run" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand run" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand check" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand check" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l message -d 'Message shown on the maintenance page (replaces {{message}})' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l retry-after -d 'Retry-After sent to clients, e.g. "30m", "90s" or integer seconds' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l secret -d 'Let holders of a bypass token in: given, or generated and printed with the bypass link' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l from -d 'Start of a scheduled window (RFC 3339, e.g. 2026-12-01T02:00:00Z)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l until -d 'End of the window (RFC 3339); Retry-After counts down to it' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l for -d 'Length of the window, from --from or from now (e.g. 30m)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l path -d 'Only this path prefix is in maintenance (whole segments; repeatable)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l host -d 'Only this host is in maintenance (`*.example.org` for its subdomains; repeatable)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l reason -d 'Why: kept in the toggle with who and when, shown by `status` and `history`' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l fleet -d 'Write the fleet key in etcd (every instance) instead of the local toggle file'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -l read-only -d 'Read-only: GET, HEAD, OPTIONS and TRACE still reach the app for everyone'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand on" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand pause" -l max -d 'Longest a request is held; then it gets the maintenance answer (default 30s)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand pause" -l message -d 'Message of the maintenance answer given to requests held too long' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand pause" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand pause" -l fleet -d 'Write the fleet key in etcd (every instance) instead of the local toggle file'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand pause" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand resume" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand resume" -l fleet -d 'Delete the fleet key in etcd instead of the local toggle file'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand resume" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand drain" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand drain" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand undrain" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand undrain" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand off" -l reason -d 'Why, for the history' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand off" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand off" -l fleet -d 'Delete the fleet key in etcd instead of the local toggle file'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand off" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand status" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand status" -l show-secret -d 'Print the bypass secret too (it is otherwise only said to be set)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand status" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -l peer -d 'The address the request comes from, as gatekeeper sees the connection (the TCP peer)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -s H -l header -d 'A request header, e.g. \'X-Forwarded-For: 1.2.3.4\' (repeatable)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -l method -d 'The request method' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -l host -d 'The Host header (default: the first listen address)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -l https -d 'The request arrived on a TLS listener'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -l json -d 'Print JSON (the same as /.gatekeeper/whoami)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand explain" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand health" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand health" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand man" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand man" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand completions" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand completions" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -f -a "add" -d 'Create a token and print its bypass link and header (only a hash is stored)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -f -a "list" -d 'List tokens: name, created, expires (never the token)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -f -a "revoke" -d 'Remove a token; every cookie it set stops working at once'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and not __fish_seen_subcommand_from add list revoke help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from add" -l ttl -d 'Lifetime, e.g. "30d", "12h" (default: until revoked)' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from add" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from list" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from revoke" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "add" -d 'Create a token and print its bypass link and header (only a hash is stored)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "list" -d 'List tokens: name, created, expires (never the token)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Remove a token; every cookie it set stops working at once'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand history" -s n -d 'How many entries' -r
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand history" -s c -l config -d 'Config file' -r -F
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand history" -s h -l help -d 'Print help'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "run" -d 'Run the daemon in the foreground (systemd runs this)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "check" -d 'Validate the config, the allowlist file and the page directory; exit 0, or print errors and exit 2'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "on" -d 'Turn maintenance on (creates the toggle file atomically; idempotent)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "pause" -d 'Hold requests instead of answering them, while the app restarts; `resume` releases them'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "resume" -d 'Release held requests (the same as `off`)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "drain" -d 'Take this instance out of its load balancer: /.gatekeeper/health answers 503 (kept across restarts)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "undrain" -d 'Put this instance back: /.gatekeeper/health answers 200 again'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "off" -d 'Turn maintenance off (removes the toggle file; idempotent)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "status" -d 'Print "maintenance: on since <time> (<message>)" or "maintenance: off", and what else applies'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "explain" -d 'Print, step by step, how the daemon would decide a request: peer, forwarding header, client, allowlist, maintenance, credential'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "health" -d 'Exit 0 when the running daemon\'s admin endpoint answers /healthz (for container health checks)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "man" -d 'Print the man page (roff, section 8), made from these commands and options'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "completions" -d 'Print the shell completion script for bash, zsh or fish'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "token" -d 'Named bypass tokens: one per person, with its own expiry, revocable alone'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "history" -d 'Print the last commands and flips from <toggle>.history, newest last'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and not __fish_seen_subcommand_from run check on pause resume drain undrain off status explain health man completions token history help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "add" -d 'Create a token and print its bypass link and header (only a hash is stored)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "list" -d 'List tokens: name, created, expires (never the token)'
complete -c gatekeeper -n "__fish_gatekeeper_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "revoke" -d 'Remove a token; every cookie it set stops working at once'
