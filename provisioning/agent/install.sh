#!/bin/sh
# Install the panel's node agent on a hosting node (run as root on the node).
# The Ansible role hosting_node does the same steps; this script is what the test hosts run.
#
#   install.sh AGENT_FILE CONFIG_FILE PANEL_PUBLIC_KEY_FILE
#
# - a system user `panel-agent` whose only SSH key is the panel's, restricted to the agent
#   (forced command, no pty, no forwarding);
# - one sudoers line that lets that user run the agent's root mode, and nothing else;
# - a user `panel-acme` for lego (certificates), which runs as neither root nor a site;
# - SFTP for site users, chrooted into their site, keys kept in /etc/ssh/panel-keys/<user>;
# - the nginx log format the metering reads, and the include of the agent's vhosts.
set -eu
agent_src=$1 config_src=$2 pubkey_file=$3
lib=/usr/local/lib/panel-agent

getent group panel-sftp >/dev/null || groupadd --system panel-sftp
if ! getent passwd panel-agent >/dev/null; then
  useradd --system --home-dir /var/lib/panel-agent --create-home --shell /bin/sh \
    --groups adm panel-agent
fi
install -d -m 0755 -o root -g root "$lib" /etc/panel-agent /etc/ssh/panel-keys
install -m 0755 -o root -g root "$agent_src" "$lib/panel-agent"
install -m 0644 -o root -g root "$config_src" /etc/panel-agent/config.json
install -d -m 0750 -o panel-agent -g panel-agent /var/lib/panel-agent
install -d -m 0755 -o root -g root /srv/sites /etc/nginx/panel-sites /var/log/nginx/panel
install -d -m 0700 -o root -g root /var/backups/panel

# The root helper writes state too (pages, and certificates lego made when it ran as root);
# the unprivileged agent owns the rest.
install -d -m 0755 -o root -g root /var/lib/panel-agent/acme /var/www/panel-pages

# lego runs as a user of its own: its account and keys in /var/lib/panel-acme, the HTTP-01
# answers in /var/www/panel-acme, which every site serves /.well-known/acme-challenge/ from
# and no site user can write.
if ! getent passwd panel-acme >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/panel-acme --no-create-home \
    --shell /usr/sbin/nologin panel-acme
fi
install -d -m 0700 -o panel-acme -g panel-acme /var/lib/panel-acme
install -d -m 0755 -o panel-acme -g panel-acme /var/www/panel-acme

printf 'panel-agent ALL=(root) NOPASSWD: %s --root\n' "$lib/panel-agent" > /etc/sudoers.d/panel-agent
chmod 0440 /etc/sudoers.d/panel-agent

install -d -m 0700 -o panel-agent -g panel-agent /var/lib/panel-agent/.ssh
key=$(head -n1 "$pubkey_file")
printf 'restrict,command="%s" %s\n' "$lib/panel-agent" "$key" > /var/lib/panel-agent/.ssh/authorized_keys
chown panel-agent:panel-agent /var/lib/panel-agent/.ssh/authorized_keys
chmod 0600 /var/lib/panel-agent/.ssh/authorized_keys

cat > /etc/ssh/sshd_config.d/panel.conf <<'CONF'
# Managed by the commune panel: SFTP for site users, inside their site only.
Match Group panel-sftp
    AuthorizedKeysFile /etc/ssh/panel-keys/%u
    ChrootDirectory /srv/sites/%u
    ForceCommand internal-sftp -d /htdocs
    AllowTcpForwarding no
    X11Forwarding no
    PermitTTY no
CONF

cat > /etc/nginx/conf.d/panel.conf <<'CONF'
# Managed by the commune panel: the metering reads the last field (bytes sent).
log_format panel '$remote_addr [$time_local] "$host" "$request" $status $bytes_sent';
include /etc/nginx/panel-sites/*.conf;
CONF
