{#
  The share of predictions whose transaction arrived: a transaction with the
  same transaction_id and customer_id and an event time within
  var('transaction_match_hours') of the prediction (ids repeat across days).
  A transaction arriving late changes the days around it, so those are
  recomputed too.
#}
{{ config(
    incremental_strategy='merge',
    unique_key='prediction_day',
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set window_days = (var('transaction_match_hours') / 24) | round(0, 'ceil') | int %}
{%- set prediction_days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}
{%- set transaction_days = changed_days(ref('stg_transactions'), 'transaction_at', 'refreshed_at', 'refreshed_at') %}
{%- if prediction_days is none or transaction_days is none %}
  {%- set days = none %}
{%- else %}
  {%- set days = (prediction_days + widen_days(transaction_days, window_days)) | unique | sort %}
{%- endif %}

with predictions as (
    select prediction_id, transaction_id, customer_id, prediction_at
    from {{ ref('stg_predictions') }}
    where {{ in_days('prediction_at', days) }}
),

transactions as (
    select transaction_id, customer_id, transaction_at
    from {{ ref('stg_transactions') }}
    where {{ in_days('transaction_at', widen_days(days, window_days)) }}
),

matched as (
    select
        p.prediction_id,
        date(p.prediction_at) as prediction_day,
        count(t.transaction_id) > 0 as has_transaction
    from predictions as p
    left join transactions as t
        on t.transaction_id = p.transaction_id
        and t.customer_id = p.customer_id
        and t.transaction_at
            between timestamp_sub(p.prediction_at, interval {{ var('transaction_match_hours') }} hour)
                and timestamp_add(p.prediction_at, interval {{ var('transaction_match_hours') }} hour)
    group by 1, 2
)

select
    prediction_day,
    count(*) as predictions,
    countif(has_transaction) as with_transaction,
    countif(has_transaction) / count(*) as share_with_transaction,
    current_timestamp() as refreshed_at
from matched
group by 1
