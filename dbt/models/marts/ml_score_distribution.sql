{#
  Each model's score distribution per day: every model in
  var('flit_models') scores every prediction (model_predictions), whichever
  was selected. Quantiles are APPROX_QUANTILES over 100 buckets.
#}
{{ config(
    incremental_strategy='merge',
    unique_key=['prediction_day', 'model'],
    partition_by={'field': 'prediction_day', 'data_type': 'date', 'granularity': 'day'}
) }}
{%- set days = changed_days(ref('stg_predictions'), 'prediction_at', 'refreshed_at', 'refreshed_at') %}

with scores as (
    {%- for model in var('flit_models') %}
    select date(prediction_at) as prediction_day, '{{ model }}' as model, {{ model }}_score as score
    from {{ ref('stg_predictions') }}
    where {{ in_days('prediction_at', days) }} and {{ model }}_score is not null
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
)

select
    prediction_day,
    model,
    count(*) as predictions,
    avg(score) as mean_score,
    approx_quantiles(score, 100)[offset(50)] as p50_score,
    approx_quantiles(score, 100)[offset(95)] as p95_score,
    current_timestamp() as refreshed_at
from scores
group by 1, 2
