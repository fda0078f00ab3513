{#
  Incremental runs read only the daily partitions that changed since this
  model was last built. BigQuery prunes partitions only on constant filters,
  so the days are looked up first and written into the query as literal
  ranges (see in_days).

  changed_days(upstream, partition_column, loaded_at_column, since_column):
  the days (YYYY-MM-DD) of `upstream` that received rows after this model's
  max(since_column) (the time of its last build that added rows), less
  var('reload_margin_hours'), and the last var('lookback_days') days. None
  on a first or full build: read everything. Late rows (a spool replayed
  days later, a retried or redriven batch, a late producer) land in the
  partition of their event day, however old: the detection finds that
  partition because it changed, not because it is recent.

  How the days are found, var('changed_days_from'):
  - 'partition_metadata' (default, for BigQuery): partitions whose
    INFORMATION_SCHEMA.PARTITIONS.last_modified_time is later. Metadata:
    no table bytes scanned, but BigQuery bills each INFORMATION_SCHEMA
    query at least 10 MB (on-demand pricing).
  - 'rows': days of the rows whose loaded_at_column is later; reads those two
    columns of the whole upstream table. For the local emulator, which does
    not update last_modified_time after a partition's first load.
#}
{% macro changed_days(upstream, partition_column, loaded_at_column, since_column) %}
  {%- if not execute or not is_incremental() -%}
    {{ return(none) }}
  {%- endif -%}
  {%- set since_query -%}
    select format_timestamp('%Y-%m-%d %H:%M:%E6S',
             timestamp_sub(max({{ since_column }}), interval {{ var('reload_margin_hours') }} hour))
    from {{ this }}
  {%- endset -%}
  {%- set since = run_query(since_query).columns[0].values()[0] -%}
  {%- if since is none -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if var('changed_days_from') == 'rows' -%}
    {%- set days_query -%}
      select distinct format_date('%Y%m%d', date({{ partition_column }}))
      from {{ upstream }}
      where {{ loaded_at_column }} > timestamp '{{ since }}'
    {%- endset -%}
  {%- else -%}
    {%- set days_query -%}
      select partition_id
      from `{{ upstream.database }}`.{{ upstream.schema }}.INFORMATION_SCHEMA.PARTITIONS
      where table_name = '{{ upstream.identifier }}'
        and partition_id not in ('__NULL__', '__UNPARTITIONED__')
        and last_modified_time > timestamp '{{ since }}'
    {%- endset -%}
  {%- endif -%}
  {%- set days = [] -%}
  {%- for id in run_query(days_query).columns[0].values() | sort -%}
    {%- do days.append(id[0:4] ~ '-' ~ id[4:6] ~ '-' ~ id[6:8]) -%}
  {%- endfor -%}
  {#- The lookback: the last var('lookback_days') days (UTC, today
      included) are read again whether or not they look changed, a net for
      rows the detection cannot see (a load whose partition metadata lags,
      a streaming buffer not yet in a partition). -#}
  {%- set today = modules.datetime.datetime.utcnow().date() -%}
  {%- for back in range(var('lookback_days') | int) -%}
    {%- set day = (today - modules.datetime.timedelta(days=back)).isoformat() -%}
    {%- if day not in days -%}
      {%- do days.append(day) -%}
    {%- endif -%}
  {%- endfor -%}
  {{ return(days | sort) }}
{% endmacro %}

{#
  A filter on `column` (a TIMESTAMP partition column) that keeps the given
  days, as constant ranges so BigQuery prunes partitions. `days` none: no
  filter; empty: nothing changed, read nothing.
#}
{% macro in_days(column, days) %}
  {%- if days is none -%}
    true
  {%- elif days | length == 0 -%}
    false
  {%- else -%}
    ({% for day in days %}({{ column }} >= timestamp '{{ day }}' and {{ column }} < timestamp_add(timestamp '{{ day }}', interval 1 day)){% if not loop.last %} or {% endif %}{% endfor %})
  {%- endif -%}
{% endmacro %}

{# `days` and the days up to `n` before and after each; none stays none. #}
{% macro widen_days(days, n) %}
  {%- if days is none -%}
    {{ return(none) }}
  {%- endif -%}
  {%- set wider = [] -%}
  {%- for day in days -%}
    {%- set center = modules.datetime.date.fromisoformat(day) -%}
    {%- for offset in range(-n, n + 1) -%}
      {%- set near = (center + modules.datetime.timedelta(days=offset)).isoformat() -%}
      {%- if near not in wider -%}
        {%- do wider.append(near) -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endfor -%}
  {{ return(wider | sort) }}
{% endmacro %}
