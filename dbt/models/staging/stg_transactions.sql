{#
  One row per transaction event. Ids are reused across days upstream, so an
  event is (transaction_id, customer_id, event time); the raw table can hold
  the same event twice, and the first load is kept. Incremental: reads only
  the raw partitions modified since the last build (see changed_days).
#}
{#- merge_update_columns: a later copy of an event never overwrites the first (the update is a no-op). #}
{{ config(
    incremental_strategy='merge',
    unique_key='transaction_key',
    partition_by={'field': 'transaction_at', 'data_type': 'timestamp', 'granularity': 'day'},
    cluster_by=['transaction_id'],
    on_schema_change='append_new_columns',
    merge_update_columns=['transaction_key']
) }}
{%- set days = changed_days(source('flit_bnpl_raw', 'raw_bnpl_txs_json'), '_timestamp', '_ingestion_timestamp', 'refreshed_at') %}

with raw as (
    select
        json_value(json_body, '$.transaction_id') as transaction_id,
        json_value(json_body, '$.customer_id') as customer_id,
        _timestamp as transaction_at,
        safe_cast(json_value(json_body, '$.amount') as float64) as amount,
        json_value(json_body, '$.customer_credit_score_range') as credit_score_range,
        json_value(json_body, '$.customer_age_bracket') as age_bracket,
        json_value(json_body, '$.device_type') as device_type,
        json_value(json_body, '$.product_category') as product_category,
        _ingestion_timestamp as ingested_at
    from {{ source('flit_bnpl_raw', 'raw_bnpl_txs_json') }}
    where {{ in_days('_timestamp', days) }}
),

first_load as (
    select *
    from raw
    qualify row_number() over (
        partition by transaction_id, customer_id, transaction_at
        order by ingested_at
    ) = 1
)

select
    concat(transaction_id, '|', coalesce(customer_id, ''), '|',
           cast(unix_micros(transaction_at) as string)) as transaction_key,
    *,
    current_timestamp() as refreshed_at
from first_load
